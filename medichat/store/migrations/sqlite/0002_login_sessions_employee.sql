-- medichat schema, version 2 (SQLite): revoking every session of an employee (logout
-- everywhere, disabling an account) finds them through an index instead of a scan.

CREATE INDEX login_sessions_employee ON login_sessions (employee_id);
