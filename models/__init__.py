"""Networks, the exported artifact and its torch-free runtime. Kept empty: importing the
package must not pull in torch or onnxruntime."""
