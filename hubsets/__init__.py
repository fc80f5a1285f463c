"""hubsets: synthetic vision-language datasets as clean Hugging Face Hub datasets, streamed fast."""

__version__ = "0.1.0"
