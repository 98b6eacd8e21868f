"""Training: the train loop, the jitted train step, the optimizer and what only training needs (parameter groups, CPU kernel gradients, initial weights)."""
