"""Prior exams for follow-up algorithms: which study is a prior (selection), the local index
of held studies, query/retrieve from a PACS, the search over both (finder), loading, and the
prior stage that runs the search for waiting jobs."""
