"""Names shared by the export, the server and the clients: signature keys, input and output
names, TF Serving's method names. One home for each, so the exporter and the server cannot
disagree. Imports nothing."""

DEFAULT = "serving_default"  # TF Serving's default signature key
IMAGE_BYTES = "serving_bytes"  # encoded image files in (the image input's second signature)

IMAGES = "images"  # serving_default's input for images: uint8 [-1, H, W, C]
IMAGE_BYTES_INPUT = "image_bytes"  # serving_bytes' input: string [-1]
CLASSES = "classes"
PROBABILITIES = "probabilities"

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

TABLE_CLASSIFY = "classify"  # a table's TF Serving classification signature (serialized tf.Examples in)
CLASSIFY_INPUTS = "inputs"  # its input, as TF Serving's Classify API names it
SCORES = "scores"  # its output beside `classes` (the class names)
