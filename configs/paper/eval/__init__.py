"""`gpg-em eval --preset` files: the papers' evaluation settings (see gpg_em/eval/presets.py)."""
