"""Building blocks every model family uses: parameter creation and types, adapters, FP8-held weights,
norms, the SwiGLU MLP and the attention/grouped-matmul kernels."""
