import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")        # an accidental download fails fast instead of hanging
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
