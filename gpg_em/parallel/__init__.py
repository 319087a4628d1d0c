"""Mesh, logical-axis sharding rules and multi-host initialisation."""
from gpg_em.parallel.mesh import (LOGICAL_RULES, MESH_AXES, batch_sharding, fit_shardings, initialize_distributed,
                                  logical_to_sharding, make_mesh, replicated)
