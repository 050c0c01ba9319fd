-- Why a run stopped (a refused key, a service out of reach): one line, shown by `status`
-- after the terminal that printed it is gone. NULL for runs that ended on their own.
ALTER TABLE runs ADD COLUMN fatal text;
