"""Photos as inputs: listing them, reading each within its budget, decoding to 8-bit BGR, pixels
and boxes. No Dask, no models."""
