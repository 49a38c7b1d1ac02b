"""Tether's core: configuration, errors, the one SQLite database and its migrations, and the text facts
(numbers and quantities, sentences, terms) that every layer shares. It imports no other Tether package."""
