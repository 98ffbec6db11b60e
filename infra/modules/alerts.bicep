// fleetscore's alerts in Azure Monitor: an `app_insights` sink writes each fleetscore alert as an
// Application Insights custom event named FleetscoreAlert (fleetscore/alerts/deliver.py,
// EVENT_NAME), with the alert's fields as custom dimensions prefixed alert_. Log search alert
// rules over the Application Insights resource find those events and fire an Action Group, whose
// e-mail and webhook receivers come from the deployment's parameters.
//
// Resource schemas checked against:
// - Action groups: "Microsoft.Insights actionGroups" (Bicep resource reference),
//   https://learn.microsoft.com/azure/templates/microsoft.insights/actiongroups, and the
//   2023-01-01 (stable) REST specification, Azure/azure-rest-api-specs
//   specification/monitor/resource-manager/Microsoft.Insights/stable/2023-01-01/actionGroups_API.json
//   (groupShortName at most 12 characters; EmailReceiver name, emailAddress, useCommonAlertSchema;
//   WebhookReceiver name, serviceUri, useCommonAlertSchema; names unique within the group).
// - Scheduled query rules: "Microsoft.Insights scheduledQueryRules 2021-08-01" (Bicep resource
//   reference), https://learn.microsoft.com/azure/templates/microsoft.insights/2021-08-01/scheduledqueryrules,
//   and the 2023-12-01 (stable) REST specification, Azure/azure-rest-api-specs
//   specification/monitor/resource-manager/Microsoft.Insights/stable/2023-12-01/scheduledQueryRule_API.json
//   (criteria.allOf[].query, timeAggregation Count, operator GreaterThan, threshold, dimensions
//   with Include/Exclude, failingPeriods; severity 0 (severest) to 4; autoMitigate defaults to true).
param name string
param location string
param tags object
@description('Resource id of the Application Insights component the FleetscoreAlert events go to.')
param appInsightsId string
@description('E-mail addresses, separated by commas or spaces. Empty: no e-mail receiver.')
param emails string = ''
// Secure: a webhook URL is often its own credential (Slack, Teams, Logic Apps); kept out of the
// deployment's recorded inputs.
@secure()
@description('Webhook URLs, separated by commas or spaces. Empty: no webhook receiver.')
param webhooks string = ''

var separators = [ ',', ' ' ]
var emailList = filter(split(emails, separators), address => !empty(address))
var webhookList = filter(split(webhooks, separators), uri => !empty(uri))

// fleetscore's severities (fleetscore/alerts/rules.py, SEVERITIES) to Azure Monitor's
// (0 Critical, 1 Error, 2 Warning, 3 Informational, 4 Verbose). A log search rule has one fixed
// severity, so there is one rule per fleetscore severity, each matching its own events.
var severities = [
  { fleetscore: 'critical', azure: 0 }
  { fleetscore: 'error', azure: 1 }
  { fleetscore: 'warning', azure: 2 }
  { fleetscore: 'info', azure: 3 }
]

// {0}: the fleetscore severity. The projected columns are the rule's dimensions.
var query = '''
customEvents
| where name == "FleetscoreAlert"
| where tostring(customDimensions.alert_severity) == "{0}"
| project timestamp,
    alert_key = tostring(customDimensions.alert_key),
    alert_rule = tostring(customDimensions.alert_rule),
    alert_group = tostring(customDimensions.alert_group)
'''

// Always deployed, receivers or not: with none, the rules still raise their alerts in Azure
// Monitor (Alerts, in the portal); adding receivers later is a parameter change on the same
// group.
resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: 'ag-${name}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'fleetscore'
    enabled: true
    emailReceivers: [for (address, i) in emailList: {
      name: 'email-${i}'
      emailAddress: address
      useCommonAlertSchema: true
    }]
    webhookReceivers: [for (uri, i) in webhookList: {
      name: 'webhook-${i}'
      serviceUri: uri
      useCommonAlertSchema: true
    }]
  }
}

resource rules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for s in severities: {
  name: 'alert-${name}-${s.fleetscore}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'fleetscore alert (${s.fleetscore})'
    description: 'A fleetscore alert of severity ${s.fleetscore}: an app_insights sink wrote a FleetscoreAlert custom event.'
    enabled: true
    severity: s.azure
    scopes: [ appInsightsId ]
    // Every 5 minutes over the last 5 minutes: the window equals the frequency, so each event is
    // counted by one evaluation and, the rule being stateless (autoMitigate false), fires once;
    // a longer window would fire the same event again at the next evaluations. The cost: an
    // event that reaches Application Insights after its window was evaluated is not alerted on
    // here (it stays in customEvents, and `fleetscore alerts list` shows the alert as sent).
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: format(query, s.fleetscore)
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          // One Azure alert per fleetscore alert key (rule|group|first window): a fleetscore
          // alert is one episode of one group and is delivered once per sink, so each becomes
          // one notification, as a webhook sink gets one POST. Split by rule alone, the groups a
          // rule raised in the same 5 minutes would share one notification that names none of
          // them. Rule and group are determined by the key (no further combinations); they are
          // dimensions so that the notification shows them.
          dimensions: [
            { name: 'alert_key', operator: 'Include', values: [ '*' ] }
            { name: 'alert_rule', operator: 'Include', values: [ '*' ] }
            { name: 'alert_group', operator: 'Include', values: [ '*' ] }
          ]
          failingPeriods: { numberOfEvaluationPeriods: 1, minFailingPeriodsToAlert: 1 }
        }
      ]
    }
    // A fleetscore alert is an event, not a condition that clears: nothing to resolve.
    autoMitigate: false
    actions: { actionGroups: [ actionGroup.id ] }
  }
}]

output actionGroupName string = actionGroup.name
