"""The book's machinery: running the chapters and building the HTML book (`runner`), a chapter's
parameters checked and shown once (`parameters`), the steps the model chapters share
(`chapter.ModelChapter`) and their figures (`plots`).

May import every package but `bench`; chapters import from here and from the packages below.
"""
