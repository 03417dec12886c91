"""
========================================
Subject-verb agreement across attractors
========================================

Does a language model track syntax? Linzen, Dupoux and Goldberg (2016)
asked whether an LSTM trained only to predict the next word prefers the
verb form that agrees with the sentence's subject, ``the cats that the dog
chases were ...``, when nouns of the other number, *attractors*, stand
between subject and verb. A model that relies on the nearest noun is
misled by them; one that keeps the subject's number in memory is not.

:func:`pylstm.datasets.make_agreement` generates such sentences. We train
word-level :class:`~pylstm.LSTMLanguageModel` instances on sentences with
at most two intervening clauses, then test them on sentences with up to
five: the model is right when, after the words before the main verb, it
gives the agreeing form (``was`` or ``were``) a higher probability than the
other one.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

from pylstm import LSTMLanguageModel
from pylstm.datasets import make_agreement

train, train_info = make_agreement(n_samples=3000, max_attractors=2,
                                   random_state=0)
test, test_info = make_agreement(n_samples=3000, max_attractors=5,
                                 random_state=1)
for sentence, k in zip(test[:4], test_info.n_attractors[:4], strict=True):
    print(f"{k} attractor(s): {sentence}")

# %%
# The nearest-noun heuristic
# --------------------------
# The baseline a model falls back on when it has not learned the structure:
# make the verb agree with the closest noun before it. (In this generator's
# vocabulary, the plural nouns are exactly those ending in ``-s``.)
words = [s.split() for s in test]
verb_at = test_info.verb_index
nearest_noun = [w[v - 2] if v > 2 else w[1]
                for w, v in zip(words, verb_at, strict=True)]
plural_noun = [noun.endswith("s") for noun in nearest_noun]
nearest_guess = np.where(plural_noun, "were", "was")
nearest_correct = nearest_guess == test_info.verb

# %%
# Train language models
# ---------------------
# Five small models (32 units, 10 epochs) that differ only in their random
# seed. Each sees the sentences as independent streams of words; nothing
# tells it about subjects or verbs.
prefixes = [" ".join(w[:v]) for w, v in zip(words, verb_at, strict=True)]
other = np.where(test_info.verb == "was", "were", "was")
seeds = range(5)
correct = {}
for seed in seeds:
    lm = LSTMLanguageModel(level="word", hidden_size=32, embedding_dim=16,
                           seq_len=32, batch_size=32, max_iter=10,
                           learning_rate_init=0.01, random_state=seed)
    lm.fit(train)
    proba = [lm.predict_proba(p, as_dict=True) for p in prefixes]
    pairs = zip(proba, test_info.verb, other, strict=True)
    correct[seed] = np.array([p[good] > p[bad] for p, good, bad in pairs])
    print(f"seed {seed}: perplexity {np.exp(lm.loss_curve_[-1]):.2f}, "
          f"agreement accuracy {correct[seed].mean():.3f}")

# %%
# Accuracy by number of attractors
# --------------------------------
# Sentences with more attractors than any training sentence had are to the
# right of the dotted line.
ks = np.arange(test_info.n_attractors.max() + 1)


def by_attractors(flags):
    return np.array([flags[test_info.n_attractors == k].mean() for k in ks])


fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
for seed in seeds:
    ax.plot(ks, by_attractors(correct[seed]), "o-", alpha=0.7,
            label=f"LSTM language model, seed {seed}")
ax.plot(ks, by_attractors(nearest_correct), "k--", lw=2,
        label="nearest-noun heuristic")
ax.axhline(0.5, color="gray", lw=0.8)
ax.axvline(2.5, color="gray", ls=":")
ax.text(2.6, 0.05, "more attractors\nthan in training", fontsize="small",
        color="gray")
ax.set_xlabel("number of attractors between subject and verb")
ax.set_ylabel("agreement accuracy")
ax.set_ylim(-0.02, 1.02)
ax.legend(fontsize="small", loc="lower left")
plt.show()

# %%
# The nearest-noun heuristic is right only when no attractor is closest to the
# verb, so it falls far below chance as attractors are added. The language
# models vary with their seed: some have learned to carry the subject's number
# across every clause, also beyond the training lengths, while others partly
# fall back on the nearby nouns, and then attractors hurt. A classifier trained
# *directly* on the was/were decision (:class:`~pylstm.LSTMClassifier` on the
# prefixes) solves this synthetic task perfectly; the question here is what
# next-word prediction alone teaches.
