-- The deadline of the register a row's doubt is about: its write-ahead's time plus the
-- --timeout of the run that sent it, by which that request is over (the client cuts it there).
-- A run that takes the row over waits for it (and a margin) before the listing's silence proves
-- the register did not land: by its own --timeout, shorter than the sender's, it registered the
-- file again while the first register could still land. NULL: written before this migration
-- (the run's own --timeout is used, as before).
ALTER TABLE jobs ADD COLUMN register_due REAL;
