"""The DeepSeek-V3 / R1 family: MLA attention, the routed-expert MoE, MTP, the latent decode cache."""
