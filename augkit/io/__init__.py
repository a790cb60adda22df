"""Reading images: the versioned decode policy, JPEG decoding, folder scanning, bounded reads and atomic writes, resizing to a model's size."""
