"""
===========================================
Generating text from the Python docs corpus
===========================================

A character-level language model learns to continue text one character at a
time. The corpus is the English text behind Python's ``help()`` (the
language reference's sections on statements, expressions, types ...), which
CPython ships in ``pydoc_data``, so nothing is downloaded
(:func:`pylstm.datasets.load_python_docs`). We train a
:class:`~pylstm.LSTMLanguageModel` for a few seconds, then sample from it,
look at its next-character distribution, and at where in a sentence it is
surprised. See :ref:`language_models` for how training works.
"""

# %%
# The corpus
# ----------
import textwrap
import time

import matplotlib.pyplot as plt
import numpy as np

from pylstm import LSTMLanguageModel
from pylstm.datasets import load_python_docs

text = load_python_docs()
print(f"{len(text):,} characters, {len(set(text))} distinct")
print(text[20_000:20_400])

# %%
# Training
# --------
# A budget of about ten seconds on two cores: 300,000 characters (the last 5%
# held out for validation), three epochs, 128 units. Each epoch cuts the
# text into 32 parallel streams read in windows of 64 characters, carrying the
# LSTM state from one window to the next (truncated backpropagation through
# time).
corpus = text[:300_000]
lm = LSTMLanguageModel(hidden_size=128, embedding_dim=32, seq_len=64,
                       batch_size=32, max_iter=3, learning_rate_init=0.01,
                       validation_fraction=0.05, random_state=0)
start = time.perf_counter()
lm.fit(corpus)
print(f"trained {lm.n_iter_} epochs in {time.perf_counter() - start:.1f} s; "
      f"vocabulary of {len(lm.vocabulary_)} characters")

# %%
# Perplexity is the exponential of the cross-entropy per character: the number
# of equally likely characters the model is hesitating between. A uniform
# guess over the vocabulary scores the vocabulary size.
epochs = np.arange(1, lm.n_iter_ + 1)
fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
ax.plot(epochs, np.exp(lm.loss_curve_), "o-", label="training")
ax.plot(epochs, lm.validation_perplexities_, "s-", label="held-out 5%")
ax.axhline(len(lm.vocabulary_), color="gray", ls="--", label="uniform guess")
ax.set_yscale("log")
ax.set_xticks(epochs)
ax.set_xlabel("epoch")
ax.set_ylabel("perplexity per character")
ax.legend()
plt.show()

# %%
# Sampling at different temperatures
# ----------------------------------
# ``generate`` reads the prompt, then samples one character at a time and feeds
# it back. Low temperatures pick likely characters (safe, repetitive text);
# higher ones take more risks. After a few seconds of training the model has
# learned spelling, frequent words, punctuation and the layout of the
# documentation, not yet meaning.
for temperature in (0.3, 0.7, 1.0):
    sample = lm.generate("The ", n_tokens=240, temperature=temperature,
                         random_state=0)
    lines = ("The " + sample).splitlines()
    print(f"--- temperature {temperature}")
    print("\n".join(textwrap.fill(line, 78) for line in lines), end="\n\n")

# %%
# The next-character distribution
# --------------------------------
# ``predict_proba`` gives the distribution of the next character after a
# prefix, aligned with ``vocabulary_``.
prompts = ["The return statem", "an instance of the cl", "if x is not Non"]
fig, axes = plt.subplots(1, len(prompts), figsize=(12, 3.2),
                         layout="constrained")
for ax, prompt in zip(axes, prompts, strict=True):
    proba = lm.predict_proba(prompt)
    top = np.argsort(proba)[::-1][:8]
    labels = [repr(lm.vocabulary_[i]) for i in top]
    ax.bar(range(8), proba[top], color="tab:blue")
    ax.set_xticks(range(8), labels)
    ax.set_ylim(0, 1)
    ax.set_title(f"after {prompt!r}", fontsize="medium")
axes[0].set_ylabel("probability of the next character")
plt.show()

# %%
# Where the model is surprised
# ----------------------------
# The surprise of each character of a new sentence, :math:`-\log_2 p` (bits),
# given everything before it (the sentence follows a paragraph of
# documentation from outside the training text). Characters inside a word and
# after familiar fragments are cheap; the starts of words carry the
# information.
held_out = text[-len(text) // 20:]
sentence = "The value of the expression is returned to the caller."
bits = []
for i, char in enumerate(sentence):
    context = held_out[:300] + " " + sentence[:i]
    p = lm.predict_proba(context, as_dict=True).get(char, 0.0)
    bits.append(-np.log2(max(p, 1e-12)))
fig, ax = plt.subplots(figsize=(12, 3), layout="constrained")
colors = plt.get_cmap("magma_r")(np.minimum(bits, 10) / 12)
ax.bar(range(len(sentence)), bits, color=colors)
ax.set_xticks(range(len(sentence)), list(sentence.replace(" ", "_")),
              fontfamily="monospace")
ax.set_ylabel("surprise (bits)")
ax.set_title(f"{np.mean(bits):.2f} bits per character on average")
plt.show()
# sphinx_gallery_thumbnail_number = 3

# %%
# Longer training and a larger model write better text. From the command
# line, ``python -m pylstm charnn train`` and
# ``python -m pylstm charnn sample`` do the same with progress output and a
# saved model.
