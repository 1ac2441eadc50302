"""``python -m engine``: quiet third-party progress bars; the engine draws its own with an ETA."""
import os

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from .cli import main  # noqa: E402

raise SystemExit(main())
