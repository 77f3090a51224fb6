"""MaPLe, DeFo and DAPrompt against their papers' equations, written out plainly here.

For each method: one forward pass (logits within 1e-5 relative) and one training step
(SGD with momentum and weight decay: the first step is ``p - lr (g + wd p)``, with g the
gradient of the plainly written loss) on the test-tiny backbone. Nothing here calls
vlkit's prompt code: the text and image towers are run block by block from the
open_clip modules, the prompts are spliced into token embeddings by hand.

References: MaPLe (Khattak et al., CVPR 2023, Sec. 3.2; the authors' trainers/maple.py
places the prompts: text context after [SOS], replaced at each deeper layer up to the
depth J; vision prompts appended after the patch tokens before ln_pre, replaced at each
deeper layer; vision prompt of layer i = F_i(text prompt of layer i)). DeFo (Wang et al.,
ICLR 2023, Sec. 3: n class-free text queries, the image feature's scaled cosine to each,
a linear layer n -> C). DAPrompt (Ge et al., arXiv:2202.06687, Sec. 3; the authors'
trainers/dapl.py: 2C prompts ``[agnostic][domain-specific][CLASS], a {domain} image.``,
CE over the source block's C logits on labelled source images, plus U times the masked
mean CE over the target block's C logits on pseudo-labels whose zero-shot confidence
reaches tau).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vlkit.methods import create_method

LR = 0.5  # a large step so the update is far above float32 rounding of the parameters
WD = 5e-4
RTOL = 1e-5


# ---- plain towers ---------------------------------------------------------------------------
def plain_text(model, embeds: torch.Tensor, tokens: torch.Tensor, deep: list[torch.Tensor] = (),
               start: int = 1) -> torch.Tensor:
    """CLIP's text transformer from (M, L, W) token embeddings; layer i >= 1 gets ``deep[i-1]``
    (n, W) written over positions start..start+n (MaPLe's deep language prompts)."""
    x = embeds + model.positional_embedding
    for i, block in enumerate(model.transformer.resblocks):
        if 1 <= i <= len(deep):
            p = deep[i - 1]
            x = torch.cat([x[:, :start], p.expand(x.shape[0], -1, -1), x[:, start + p.shape[0]:]], dim=1)
        x = block(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    return x[torch.arange(len(x)), tokens.argmax(dim=-1)] @ model.text_projection  # (M, D), EOT = max id


def plain_image(visual, images: torch.Tensor, prompts: list[torch.Tensor]) -> torch.Tensor:
    """The ViT with ``prompts[0]`` appended after the patch tokens (before ln_pre) and
    ``prompts[i]`` replacing the last n tokens before block i (MaPLe's deep vision prompts)."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)  # (B, T, W)
    x = torch.cat([visual.class_embedding.expand(len(x), 1, -1), x], dim=1) + visual.positional_embedding
    n = prompts[0].shape[0] if prompts else 0
    if prompts:
        x = torch.cat([x, prompts[0].expand(len(x), -1, -1)], dim=1)
    x = visual.ln_pre(x)
    for i, block in enumerate(visual.transformer.resblocks):
        if 1 <= i < len(prompts):
            x = torch.cat([x[:, :-n], prompts[i].expand(len(x), -1, -1)], dim=1)
        x = block(x)
    return visual.ln_post(x[:, 0]) @ visual.proj  # (B, D)


def spliced(backbone, texts: list[str], ctx: torch.Tensor, start: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token embeddings of ``texts`` with ``ctx`` ((n, W) shared or (M, n, W) per text) at start..start+n."""
    tokens = backbone.tokenize(texts)  # (M, L)
    embeds = backbone.model.token_embedding(tokens)  # (M, L, W)
    ctx = ctx.expand(len(texts), -1, -1) if ctx.ndim == 2 else ctx
    embeds = torch.cat([embeds[:, :start], ctx, embeds[:, start + ctx.shape[1]:]], dim=1)
    return embeds, tokens


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) per-image -log softmax(logits)[label]."""
    return torch.logsumexp(logits, dim=1) - logits[torch.arange(len(labels)), labels]


def assert_relative(ours: torch.Tensor, ref: torch.Tensor, rtol: float = RTOL) -> None:
    """max |ours - ref| <= rtol * max |ref|."""
    err = float((ours.detach() - ref.detach()).abs().max())
    assert err <= rtol * float(ref.detach().abs().max()), f"max error {err:.3g} vs scale {float(ref.abs().max()):.3g}"


def check_sgd_step(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], loss: torch.Tensor,
                   leaves: dict[str, torch.Tensor], lr: float = LR) -> None:
    """``after == before - lr (grad + wd * before)`` per parameter (SGD's first momentum step)."""
    assert set(after) == set(leaves)
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    for name, p0 in before.items():
        expected = p0 - lr * (grads[name] + WD * p0)
        assert float((expected - p0).abs().max()) > 1e-4, f"{name}: the step does not move it"
        assert_relative(after[name], expected)


def one_step(name: str, task, **options):
    """(untrained, after one full-batch SGD step at lr LR) fits of ``name``, no selection, no augmentation."""
    common = dict(augment=False, select_on_val=False, warmup_epochs=0, batch_size=256, **options)
    start = create_method(name, epochs=0, **common).fit(task)
    stepped = create_method(name, epochs=1, lr=LR, **common).fit(task)
    return start, stepped


# ---- MaPLe ---------------------------------------------------------------------------------
def test_maple_forward_and_step_follow_the_coupled_deep_prompts(colour_task, tiny_backbone):
    model, visual = tiny_backbone.model, tiny_backbone.model.visual
    start, stepped = one_step("maple", colour_task)
    names = colour_task.classnames
    texts = [f"a photo of a {c}." for c in names]  # ctx_init "a photo of a", n_ctx 2: "a photo" is learned
    p0 = {k: v.detach().clone().requires_grad_(True) for k, v in start.net_.state_dict().items()}
    assert start.net_.depth == 2  # min(J = 9, test-tiny's 2 layers)

    def logits(images: torch.Tensor) -> torch.Tensor:
        ctx, deep_text = p0["encoder.ctx"], [p0["text_deep.0"]]
        vision = [ctx @ p0["proj.weight"].T + p0["proj.bias"],  # F_0(P_0)
                  deep_text[0] @ p0["deep_proj.0.weight"].T + p0["deep_proj.0.bias"]]  # F_1(P_1)
        text = F.normalize(plain_text(model, *spliced(tiny_backbone, texts, ctx), deep=deep_text), dim=-1)
        image = F.normalize(plain_image(visual, images, vision), dim=-1)
        return tiny_backbone.logit_scale * image @ text.T  # (B, C)

    images = torch.stack([tiny_backbone.preprocess(colour_task.train_images.image(i))
                          for i in range(len(colour_task.train_images))])
    with torch.no_grad():
        assert_relative(start.logits(images), logits(images))
    loss = cross_entropy(logits(images), colour_task.train_labels).mean()
    check_sgd_step({k: v.detach() for k, v in p0.items()}, dict(stepped.net_.state_dict()), loss, p0)


# ---- DeFo ----------------------------------------------------------------------------------
def test_defo_forward_and_step_follow_the_decomposition_and_linear_head(colour_task, tiny_backbone):
    start, stepped = one_step("defo", colour_task, n_queries=5, n_ctx=3)
    p0 = {k: v.detach().clone().requires_grad_(True) for k, v in start.net_.state_dict().items()}
    assert p0["encoder.ctx"].shape == (5, 3, 32) and p0["head.weight"].shape == (4, 5)
    queries = ["X X X ."] * 5  # [SOS] q_j (3 learned tokens) "." [EOS]: no class name

    def logits(x: torch.Tensor) -> torch.Tensor:
        g = F.normalize(plain_text(tiny_backbone.model, *spliced(tiny_backbone, queries, p0["encoder.ctx"])), dim=-1)
        s = tiny_backbone.logit_scale * F.normalize(x, dim=-1) @ g.T  # (B, n): s_j = <f(x), g(q_j)> / tau
        return s @ p0["head.weight"].T + p0["head.bias"]  # (B, C): W s + b

    x = colour_task.train_features[:, 0]  # the evaluation view (augment=False)
    with torch.no_grad():
        assert_relative(start.logits(x), logits(x))
    loss = cross_entropy(logits(x), colour_task.train_labels).mean()
    check_sgd_step({k: v.detach() for k, v in p0.items()}, dict(stepped.net_.state_dict()), loss, p0)


# ---- DAPrompt ------------------------------------------------------------------------------
def test_daprompt_forward_and_step_follow_the_two_domain_layout_and_loss(colour_adapt_task, tiny_backbone):
    task, scale = colour_adapt_task, tiny_backbone.logit_scale
    xs, ys = F.normalize(task.train_features[:, 0], dim=-1), task.train_labels  # labelled source (eval view)
    xt = F.normalize(task.extras["target_views"][:, 0], dim=-1)  # unlabelled target (eval view)
    probs = (scale * xt @ F.normalize(task.text_weights, dim=-1).T).softmax(dim=1)  # zero-shot, T = 1
    confidence, pseudo = probs.max(dim=1)
    tau = float(confidence.median())  # about half the target images pass the threshold
    mask = (confidence >= tau).float()
    assert 0 < mask.sum() < len(mask)
    start, stepped = one_step("daprompt", task, tau=tau, u=0.7)
    assert start.domains_ == ["photo", "noisy"]
    p0 = {k: v.detach().clone().requires_grad_(True) for k, v in start.net_.state_dict().items()}
    m1, m2 = p0["agnostic"].shape[0], p0["specific"].shape[1]
    assert (m1, m2) == (16, 16) and p0["specific"].shape[0] == 2
    names, c = task.classnames, task.num_classes
    # 2C prompts: source domain's C, then the target domain's C
    texts = [" ".join(["X"] * (m1 + m2)) + f" {n}, a {d} image." for d in start.domains_ for n in names]
    ctx = torch.cat([torch.cat([p0["agnostic"], p0["specific"][d]]).expand(c, -1, -1) for d in (0, 1)])

    def logits(x: torch.Tensor) -> torch.Tensor:
        text = F.normalize(plain_text(tiny_backbone.model, *spliced(tiny_backbone, texts, ctx)), dim=-1)  # (2C, D)
        return scale * x @ text.T  # (B, 2C)

    with torch.no_grad():
        assert_relative(start.logits(task.unlabeled_features), logits(xt)[:, c:])  # prediction: target prompts
    loss_x = cross_entropy(logits(xs)[:, :c], ys).mean()
    loss_u = (cross_entropy(logits(xt)[:, c:], pseudo) * mask).sum() / mask.sum()
    check_sgd_step({k: v.detach() for k, v in p0.items()}, dict(stepped.net_.state_dict()), loss_x + 0.7 * loss_u,
                   p0)
