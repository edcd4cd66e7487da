package keystore

// WithoutReturning makes s behave as on a server without INSERT ...
// RETURNING (MySQL), so that tests on MariaDB cover that path too.
func WithoutReturning(s *Store) { s.noReturning.Store(true) }
