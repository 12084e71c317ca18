"""Offline replay evaluation: interaction data replayed in-process (no Kafka) through the stream's own code.

Modules: datasets (RecBole atomic files, ML-100K), protocol (split, queries, cold-item targets, metrics), replay
(the replay loop, item embeddings, the default model = stream_app.core.ranking's one ranking function), baselines,
tuning (validation-only search), cli (`stream-app eval`).

Protocol
- Data: RecBole atomic files, `<name>.inter` (user_id:token, item_id:token, timestamp:float, rating optional) and
  `<name>.item` (its token/token_seq columns are the item text; ML-100K: "title (year). genres"). `ml-100k` is read
  from the recbole 1.2.1 wheel's example data (downloaded once with pip; recbole itself is never imported).
- Implicit feedback: every interaction counts as a positive event. When a rating column exists it only picks the
  event type whose weight the interest model applies (1-2 view, 3 click, 4 cart, 5 purchase).
- Order: each user's interactions sorted by timestamp, ties kept in file order (stable sort).
- Leave-one-out: a user's last interaction is the test target, the second-to-last the validation target; users
  with fewer than 3 interactions are not evaluated (they still feed the collaborative statistics).
- Full ranking: every item of the catalogue is scored; the items the user consumed before the target are
  excluded (a target the user already consumed is a miss, as the stream never re-recommends consumed items).
  Metrics HR@10, NDCG@10, HR@50 (one relevant item), averaged over users; ties in score are resolved as the
  expectation over a uniformly random order of the tied items.
- Modes. `standard`: every interaction except the held-out targets is replayed first, then each user gets one
  list (comparable to published leave-one-out numbers). `streaming`: one strict global time-ordered pass; each
  user's list is the one the stream would push right before the target event, built only from events earlier in
  the global order (interest state, co-occurrence and popularity alike): no future data anywhere.
- Models, all in the same replay: most-popular (counts so far), item-knn (co-occurrence of every pair of a
  user's items, cosine-normalised, learned from the replayed stream), text-mean (mean embedding of the last 10
  items), seed-attention (stream_app.core.interest with one slot, no decay, equal event weights, ranked through
  stream_app.core.ranking.merge_slot_hits) and the product default `blend` (stream_app.core.interest with the settings'
  parameters, ranked by stream_app.core.ranking.rank over stream_app.core.collab's co-occurrence, directed-sequence
  and popularity counters: the function the stream calls).
- Candidate search is exact numpy scoring over all item embeddings, standing in for Qdrant.
- Tuning (`--tune`) searches the default's parameters on validation targets (the cold-item boosts also on the
  stream's other cold-item events), never on test targets; the reported run uses the values in Settings.
"""
