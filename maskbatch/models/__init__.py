"""The models at inference (no TensorFlow, no Dask): the face detectors, the mask classifier, and
their weight files. The bundled ONNX files and cards live beside this code."""
