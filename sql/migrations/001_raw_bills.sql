-- Raw bill tables: one row per bill line, typed, with lineage (archive_sha1 + line_no).
-- Units: *_fen BIGINT fen; fee_millifen BIGINT milli-fen (1/1000 fen); times TIMESTAMPTZ (from Beijing time).
-- Load key of every row: (bill_mchid, bill_type, bill_date). A load replaces its key's rows in one transaction.
create schema if not exists raw;

create table raw.bill_loads (
    mchid varchar not null,
    bill_type varchar not null,          -- trade_all | trade_success | trade_refund | fundflow_basic | fundflow_operation | fundflow_fees
    bill_date date not null,
    archive_sha1 varchar not null,       -- SHA-1 of the decompressed bill bytes (WeChat Pay's hash_value)
    source_label varchar,
    parser_version varchar not null,
    row_count bigint not null,
    header_titles varchar[] not null,
    extra_columns varchar[] not null,    -- detail titles we do not know (schema drift), kept in extra_columns JSON
    absent_columns varchar[] not null,   -- optional known titles the file lacks (loaded as NULL)
    extra_summary_columns varchar[] not null,
    loaded_at timestamptz not null default current_timestamp,
    primary key (mchid, bill_type, bill_date)
);

create table raw.trade_bill_rows (
    bill_mchid varchar not null,
    bill_type varchar not null,          -- trade_all | trade_success | trade_refund
    bill_date date not null,
    archive_sha1 varchar not null,
    line_no bigint not null,             -- 1-based line in the decompressed file (the header is line 1)
    trade_time timestamptz not null,     -- 交易时间
    appid varchar,                       -- 公众账号ID
    mchid varchar,                       -- 商户号
    sub_mchid varchar,                   -- 特约商户号 (子商户号 in old files); '0' in direct mode
    device_info varchar,                 -- 设备号
    transaction_id varchar,              -- 微信订单号
    out_trade_no varchar,                -- 商户订单号
    openid varchar,                      -- 用户标识
    trade_type varchar,                  -- 交易类型
    trade_state varchar,                 -- 交易状态: SUCCESS | REFUND | REVOKED
    bank_type varchar,                   -- 付款银行
    currency varchar,                    -- 货币种类
    settlement_amount_fen bigint,        -- 应结订单金额
    coupon_amount_fen bigint,            -- 代金券金额
    refund_applied_at timestamptz,       -- 退款申请时间 (REFUND bills only)
    refund_succeeded_at timestamptz,     -- 退款成功时间 (REFUND bills only)
    refund_id varchar,                   -- 微信退款单号; '0' on payment rows
    out_refund_no varchar,               -- 商户退款单号; '0' on payment rows
    refund_amount_fen bigint,            -- 退款金额
    recharge_coupon_refund_fen bigint,   -- 充值券退款金额
    refund_type varchar,                 -- 退款类型
    refund_status varchar,               -- 退款状态 (snapshot at bill generation)
    description varchar,                 -- 商品名称
    attach varchar,                      -- 商户数据包
    fee_millifen bigint,                 -- 手续费, signed
    fee_rate varchar,                    -- 费率 as printed, e.g. 0.60%
    fee_rate_pct decimal(7, 4),          -- 费率 as an exact percentage, e.g. 0.6000
    order_amount_fen bigint,             -- 订单金额
    requested_refund_fen bigint,         -- 申请退款金额
    fee_rate_remark varchar,             -- 费率备注
    legacy_total_amount_fen bigint,      -- 总金额 (old-format merchants)
    legacy_red_packet_fen bigint,        -- 企业红包金额 (old format)
    legacy_red_packet_refund_fen bigint, -- 企业红包退款金额 (old format)
    extra_columns json                   -- unknown columns {title: value}; NULL when the header has none
);

create table raw.trade_bill_summaries (
    bill_mchid varchar not null,
    bill_type varchar not null,
    bill_date date not null,
    archive_sha1 varchar not null,
    line_no bigint not null,             -- line of the summary header; the values are on line_no + 1
    row_count bigint not null,           -- 总交易单数
    settlement_amount_fen bigint,        -- 应结订单总金额
    refund_amount_fen bigint,            -- 退款总金额 (old: 总退款金额)
    recharge_coupon_refund_fen bigint,   -- 充值券退款总金额
    fee_millifen bigint,                 -- 手续费总金额
    order_amount_fen bigint,             -- 订单总金额
    requested_refund_fen bigint,         -- 申请退款总金额
    legacy_total_amount_fen bigint,      -- 总交易额 (old format)
    legacy_red_packet_refund_fen bigint, -- 总企业红包退款金额 (old format)
    extra_columns json                   -- unknown summary titles {title: raw value}
);

create table raw.fund_flow_rows (
    bill_mchid varchar not null,
    bill_type varchar not null,          -- fundflow_basic | fundflow_operation | fundflow_fees
    bill_date date not null,
    archive_sha1 varchar not null,
    line_no bigint not null,
    booked_at timestamptz not null,      -- 记账时间
    business_no varchar,                 -- 微信支付业务单号
    flow_no varchar,                     -- 资金流水单号
    business_name varchar,               -- 业务名称
    business_type varchar,               -- 业务类型
    direction varchar,                   -- 收支类型: 收入 | 支出
    amount_fen bigint,                   -- 收支金额(元), unsigned as printed
    balance_fen bigint,                  -- 账户结余(元)
    applicant varchar,                   -- 资金变更提交申请人
    remark varchar,                      -- 备注
    voucher_no varchar,                  -- 业务凭证号
    extra_columns json
);

create table raw.fund_flow_summaries (
    bill_mchid varchar not null,
    bill_type varchar not null,
    bill_date date not null,
    archive_sha1 varchar not null,
    line_no bigint not null,
    row_count bigint not null,           -- 资金流水总笔数
    income_count bigint,                 -- 收入笔数
    income_amount_fen bigint,            -- 收入金额
    expense_count bigint,                -- 支出笔数
    expense_amount_fen bigint,           -- 支出金额
    extra_columns json
);
