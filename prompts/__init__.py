"""Prompt learners (CoOp, CoCoOp, DeFo, KgCoOp, MaPLe, DAPrompt) and prompt templates."""
from vlkit.prompts.base import PromptConfig, PromptMethod
from vlkit.prompts.cocoop import CoCoOp
from vlkit.prompts.coop import CoOp
from vlkit.prompts.daprompt import DAPrompt
from vlkit.prompts.defo import DeFo
from vlkit.prompts.encoder import PromptedTextEncoder
from vlkit.prompts.kgcoop import KgCoOp
from vlkit.prompts.maple import MaPLe

__all__ = ["CoCoOp", "CoOp", "DAPrompt", "DeFo", "KgCoOp", "MaPLe", "PromptConfig", "PromptMethod",
           "PromptedTextEncoder"]
