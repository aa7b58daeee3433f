"""What an analyst reads: the HTML and Markdown report (``render`` with ``templates/``), pivot queries
(``pivots``) and findings as AWS Security Finding Format (``asff``). Pure: no AWS calls, no workdir writes."""
