"""Text and images in and out: `processor` (tokenizing, image soft-token expansion, length checks),
`image_preprocess` (resize and patchify as transformers does) and `detokenizer` (incremental text)."""
