"""zscir: zero-shot composed image retrieval.

Importing the package is cheap: heavy optional dependencies (diffusers, gradio, faiss, spaCy)
load lazily inside the features that need them.
"""

__version__ = "0.1.0"
