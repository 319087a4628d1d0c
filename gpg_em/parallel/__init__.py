"""Mesh, logical-axis sharding rules and multi-host initialisation."""
from gpg_em.parallel.distributed import (agree_any, agree_max, all_rows, gather_host_rows, global_batch,
                                         initialize_distributed, is_primary, left_pad_to, process_slice,
                                         replicated_array)
from gpg_em.parallel.mesh import (LOGICAL_RULES, MESH_AXES, activation_mesh, active_batch_shards, batch_sharding, batch_shards,
                                  constrain, fit_sharding, fit_shardings, logical_sharding, logical_to_sharding,
                                  make_mesh, mesh_shape, on_mesh, replicated)
