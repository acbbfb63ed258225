"""Federation: aggregation strategies (pure), secure aggregation, privacy ledger, round coordinator."""
