"""Methods on the frozen image tower's intermediate layers: LST's side network, Head2Toe's head.

Both read every block's pooled output tokens (:mod:`vlkit.features.layer_features`) from
the feature store while training, so no step runs the tower and no gradient reaches it;
at inference they run the frozen tower once per image and read its blocks on the way.
"""
from vlkit.methods.intermediate.base import LayerInputs, LayerMethod
from vlkit.methods.intermediate.head2toe import Head2Toe, Head2ToeConfig
from vlkit.methods.intermediate.lst import LST, LSTConfig

__all__ = ["Head2Toe", "Head2ToeConfig", "LST", "LSTConfig", "LayerInputs", "LayerMethod"]
