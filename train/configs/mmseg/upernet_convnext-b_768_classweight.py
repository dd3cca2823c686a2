# upernet_convnext-b_768 with a class-weighted cross-entropy: background (most pixels) down-weighted, lung (the
# lowest Dice, thin noisy alveoli) up-weighted. A starting point to tune by CV, not a tuned result.
# Batch 4 per GPU with GroupNorm heads, as upernet_convnext-b_768 (BatchNorm statistics at batch 4 are noise).
_base_ = './upernet_convnext-b_768.py'
# order of inference.organs.CLASSES: background, kidney, prostate, largeintestine, spleen, lung
class_weight = [0.5, 1.0, 1.0, 1.0, 1.0, 1.5]
model = dict(
    decode_head=dict(loss_decode=dict(class_weight=class_weight)),
    auxiliary_head=dict(loss_decode=dict(class_weight=class_weight)))
