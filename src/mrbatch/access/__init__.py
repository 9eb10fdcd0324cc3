"""The access point: one endpoint over every region's bucket (:mod:`.accesspoint`), the
ledger of accepted uploads that makes an acknowledgement a promise (:mod:`.ledger`), and
presigned links (:mod:`.links`)."""
