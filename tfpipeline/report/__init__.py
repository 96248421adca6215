"""The report stage: evaluation, TensorBoard and explanations.
"""
