-- Fixture for the role-mapping examples: the customer account the
-- USER_CREATED events refer to (customer-service creates customers; the
-- plugin only links users to existing ones).
INSERT INTO customers (id, name) VALUES
    ('cust-7d1e2f40-5a8b-4c3d-9e21-0f6a7b8c9d01', 'Boulangerie Durand SARL');
