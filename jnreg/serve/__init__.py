"""Serving the registry through vLLM: verified local copies, served names, the LoRA resolver and the name mapper.

Importing this package imports neither torch nor vLLM; only ``jnreg.serve.resolver`` needs vLLM.
"""
