"""The train stage's machinery, in the order it runs: plan the sweep, train it stacked, then
for each job save its files and log its run."""
