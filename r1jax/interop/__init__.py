"""Exchange with the Hugging Face world: safetensors I/O, the HF tensor layouts, FP8 blocks, the
streaming and resumable convert/export jobs, PEFT adapters."""
