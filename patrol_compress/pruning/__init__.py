"""PATROL's pruning machinery: soft masks, FISTA, torch-pruning removal, budgets."""
