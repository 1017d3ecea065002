"""The customer club at the till: phone-number exchange, member lookup, enrollment by a
merchant-initiated Vipps login, and the member-price update before the payment request."""
