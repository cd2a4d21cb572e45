"""One model definition per architecture, and the ONNX graph builder they share."""
