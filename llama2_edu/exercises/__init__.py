"""Automatic checks for the book's exercises: `check_...(your_function)` compares a learner's
implementation with the reference on random inputs and explains what is wrong when it is.

One module per chapter; each check is re-exported here so notebooks can write
`from llama2_edu.exercises import check_rmsnorm`.
"""
