"""The training stages; each module registers its stage in ``ups.training.stage.STAGES``."""
