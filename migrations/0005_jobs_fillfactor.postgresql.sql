-- Room on each page of jobs for a row's next version. A claim and a completion each write a
-- new version of the row (never a HOT update: `state` is in the partial indexes' predicates);
-- on a full page that version goes to another page, often a new one at the end of the
-- table. With 30% of each page left free, PostgreSQL puts it on the row's own page: less WAL
-- per job (case 9: 7% less for the claim and for the completion) and a smaller table after
-- the rows are done; a queue of pending rows takes 40% more pages until then. Pages written
-- before this migration keep their old filling.
ALTER TABLE jobs SET (fillfactor = 70);
