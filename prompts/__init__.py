"""Prompt learners (CoOp, CoCoOp, DeFo, KgCoOp, MaPLe, DAPrompt) and prompt templates."""
