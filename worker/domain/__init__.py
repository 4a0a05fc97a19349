"""Pure: the types the ports speak, the decision and its tables, money, producer limits,
errors. No I/O."""
