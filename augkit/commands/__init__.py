"""One module per CLI command; each parses options, calls one library function and prints."""
