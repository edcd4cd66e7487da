package keystore

// Listings page by id: every id is a UUIDv7, so id order is creation order,
// and "id > cursor ORDER BY id LIMIT n" walks an index without OFFSET. The
// cursor is the last id of the previous page; callers treat it as opaque.

// pageLimit validates a request's Limit and returns the page size.
func pageLimit(limit int) (int, error) {
	switch {
	case limit == 0:
		return DefaultPageSize, nil
	case limit < 0 || limit > MaxPageSize:
		return 0, invalid("Limit", "must be 0 (default %d) or 1..%d", DefaultPageSize, MaxPageSize)
	}
	return limit, nil
}

// validateCursor checks a Cursor: "" or an id this package made.
func validateCursor(cursor string) error {
	if len(cursor) > 64 {
		return invalid("Cursor", "is not a cursor returned by a List method")
	}
	for i := 0; i < len(cursor); i++ {
		if !isPrefixByte(cursor[i]) {
			return invalid("Cursor", "is not a cursor returned by a List method")
		}
	}
	return nil
}

// makePage turns up to limit+1 rows, fetched in id order, into a page.
func makePage[T any](items []T, limit int, id func(T) string) Page[T] {
	if len(items) <= limit {
		return Page[T]{Items: items}
	}
	items = items[:limit]
	return Page[T]{Items: items, NextCursor: id(items[limit-1])}
}
