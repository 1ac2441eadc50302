"""The Merge and Ensemble pages' choice of unlabelled target text: the target's train split with
its labels withheld, or a user's text file (uploaded, or a path on this machine). The engine
reads and checks the file (engine/data/target_text.py); this only draws the choice."""
from __future__ import annotations

from typing import Optional

import streamlit as st

from engine.data.target_text import TargetTextError, read_target_text, store_target_text

FILE = "a text file (one sentence per line)"


def target_text_picker(ws, key: str, split: str = "train") -> Optional[str]:
    """'' for the target's ``split`` (what the method reads by default); the file's path for a
    file (a bad one is returned as typed, so the engine's preflight names its problem); None while
    a file is chosen but none given yet."""
    default = f"the target's {split} split (labels withheld)"
    choice = st.radio("Unlabelled target text", (default, FILE), key=f"{key}_text_source", horizontal=True)
    if choice == default:
        st.caption(f"Learns on the target's {'training' if split == 'train' else split} texts with their "
                   f"labels withheld (unlabelled target text).")
        return ""
    upload = st.file_uploader("Upload a UTF-8 text file", type=["txt"], key=f"{key}_text_upload")
    typed = st.text_input("… or the path of one on this machine", key=f"{key}_text_path").strip()
    if upload is None and not typed:
        st.info("Upload a text file or give its path: the method learns on its lines, no labels.")
        return None
    try:
        text = (store_target_text(upload.getvalue(), upload.name, ws.cache_dir) if upload is not None
                else read_target_text(typed))
    except TargetTextError as exc:
        if upload is not None:  # nothing kept: say why here (a typed path's problem: the preflight)
            st.error(str(exc))
            return None
        return typed
    st.caption(f"Learns on the unlabelled target text in {text.describe()}.")
    return text.path
