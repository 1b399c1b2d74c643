-- Generated from harness/debezium.py (init_sql); tests/unit/test_deploy.py keeps them equal.
-- The journal database and one business database per source system, with the sample tables.
CREATE DATABASE journal;
CREATE DATABASE posdb;
\connect posdb
CREATE TABLE sales_order (
    id bigint PRIMARY KEY, order_no text NOT NULL, channel text NOT NULL, store_code text NOT NULL,
    company_code text NOT NULL, customer_code text, order_date date NOT NULL, currency text NOT NULL,
    net_amount numeric(18,2) NOT NULL, tax_amount numeric(18,2) NOT NULL,
    gross_amount numeric(18,2) NOT NULL, points_deduction numeric(18,2) NOT NULL,
    payment_method text NOT NULL, status text NOT NULL, created_at timestamp NOT NULL,
    updated_at timestamptz);
CREATE TABLE sales_order_line (
    id bigint PRIMARY KEY, order_id bigint NOT NULL REFERENCES sales_order(id) ON DELETE CASCADE,
    line_no int NOT NULL, sku text NOT NULL, quantity numeric(18,4) NOT NULL,
    amount numeric(18,2) NOT NULL);
ALTER TABLE sales_order REPLICA IDENTITY FULL;
ALTER TABLE sales_order_line REPLICA IDENTITY FULL;
\connect postgres
CREATE DATABASE purchasingdb;
\connect purchasingdb
CREATE TABLE purchase_invoice (
    id bigint PRIMARY KEY, invoice_no text NOT NULL, supplier_code text NOT NULL,
    supplier_class text NOT NULL, region text NOT NULL, company_code text NOT NULL,
    invoice_date date NOT NULL, category text NOT NULL, expense_item text, department_code text,
    currency text NOT NULL, exchange_rate numeric(18,6) NOT NULL, net_amount numeric(18,2) NOT NULL,
    tax_amount numeric(18,2) NOT NULL, gross_amount numeric(18,2) NOT NULL,
    payment_terms text NOT NULL, created_at timestamp NOT NULL);
ALTER TABLE purchase_invoice REPLICA IDENTITY FULL;
\connect postgres
CREATE DATABASE payrolldb;
\connect payrolldb
CREATE TABLE payroll_line (
    id bigint PRIMARY KEY, run_id text NOT NULL, period text NOT NULL, employee_code text NOT NULL,
    department_code text NOT NULL, company_code text NOT NULL, pay_date date NOT NULL,
    gross_salary numeric(18,2) NOT NULL, social_insurance_company numeric(18,2) NOT NULL,
    social_insurance_employee numeric(18,2) NOT NULL, income_tax numeric(18,2) NOT NULL,
    net_pay numeric(18,2) NOT NULL);
ALTER TABLE payroll_line REPLICA IDENTITY FULL;
\connect postgres
