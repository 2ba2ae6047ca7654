"""The book's machinery: running the chapters and building the HTML book (`runner`), the steps the
model chapters share (`chapter`) and their figures (`plots`).

May import every package but `bench`; chapters import from here and from the packages below.
"""
