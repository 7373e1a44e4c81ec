"""Metric learning for fashion compatibility: plain PyTorch + open_clip, no Django.

Modules:
    config    -- dataclasses for the model and the training run
    slots     -- the normalised outfit slots and the H&M → slot mapping
    data      -- H&M catalog reader, basket → outfit cleaning, the fixed held-out split (salted hash)
    audience  -- free-text audience → women / men / kids / baby / unisex
    model     -- open_clip model factory (default: EfficientNet-Lite0 + MiniLM towers)
    features  -- batched tower inference and the on-disk feature cache
    onnx_towers -- the frozen towers exported to ONNX and run by ONNX Runtime (``tower_backend``)
    towers    -- partial tower fine-tuning: the last image blocks / text layers trained end to end
    heads     -- trainable heads: general image/text space and the type-aware compatibility space;
                 save_heads / load_heads / zero_shot_heads (all that serving needs)
    dataset   -- TrainData (the arrays a run trains on), splits, training triplets, FITB questions
    distances -- Euclidean / inner-product distances shared by losses and mining
    losses    -- (package) contrastive, triplet, type-aware triplet, InfoNCE/CLIP, N-pair, angular, center
    mining    -- offline and online (batch-all, batch-hard, semi-hard) triplet mining
    metrics   -- Recall@K, MRR, FITB accuracy, compatibility AUC, precision@K
    train     -- the training loop; ``python -m ml.train --help``
    protocols -- held-out FITB / AUC protocols: popularity-matched (headline) and random
    scorers   -- how each table row scores items: heads, popularity, attribute match, co-occurrence
    retrieval -- complementary-item retrieval, audience coherence and slot validity of the picks
    evaluate  -- held-out evaluation tables with baselines; ``python -m ml.evaluate --help``
    tasks     -- the Celery tasks (the one Django-aware module of this package)
"""
