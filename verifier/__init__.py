"""veriswarm.verifier: sampled audits of shard outputs by re-execution, verdicts, evidence."""
