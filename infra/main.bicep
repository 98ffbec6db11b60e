// fleetscore on Azure: everything `azd up` provisions.
// Identities, not keys: the Function App, the Batch pool and the Stream Analytics job each use
// managed identities with least-privilege roles; the storage account allows no shared key.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; used to name the resource group and resources.')
param environmentName string

@minLength(1)
@description('Region for all resources (a region with Flex Consumption, Batch and Stream Analytics).')
@metadata({ azd: { type: 'location' } })
param location string

@description('Object id of the deploying user, given data access to the store for debugging. Empty: none.')
param principalId string = ''

@description('Batch node VM size. Batch changes a pool\'s VM size only while the pool has no node: to change it after the first deployment, give the pool a new name too (batchPoolName), see docs/operations.md.')
param batchVmSize string = 'Standard_D2s_v5'

@description('Name (id) of the Batch pool. Change it together with batchVmSize: the templates create a new pool and point the app at it.')
@minLength(1)
@maxLength(64)
param batchPoolName string = 'fleetscore'

@description('Autoscale cap of the Batch pool.')
@minValue(1)
param batchMaxNodes int = 10

@description('Spot (low-priority) nodes instead of dedicated ones.')
param batchSpot bool = false

@description('Scoring container image tag, pushed by the post-provision hook.')
param scoringImageTag string = '0.1.0'

@description('Compute backend of the Function App: local (in the activity) or batch.')
@allowed([ 'local', 'batch' ])
param scoringBackend string = 'batch'

@description('NCRONTAB schedule of the hourly run (five minutes past the hour by default).')
param scoringSchedule string = '0 5 * * * *'

@description('NCRONTAB schedule of the model refit (FLEETSCORE_REFIT_SCHEDULE, six fields, UTC), for example 0 30 2 * * * (daily at 02:30). Empty: no refit timer (off).')
param refitSchedule string = ''

@description('FLEETSCORE_MAX_FAILED_PERCENT: a run fails once more than this percentage (0 to 100) of its sensors failed. Empty: no limit.')
param maxFailedPercent string = ''

@description('E-mail addresses notified of fleetscore alerts written to Application Insights (an app_insights sink), separated by commas or spaces. Empty: none.')
param alertEmails string = ''

@secure()
@description('Webhook URLs called (common alert schema) for fleetscore alerts written to Application Insights, separated by commas or spaces. Empty: none.')
param alertWebhooks string = ''

var tags = { 'azd-env-name': environmentName }
var token = toLower(uniqueString(subscription().id, environmentName, location))
var storeContainer = 'fleetscore'
var deploymentContainer = 'app-package-${take(token, 12)}'
var scoringImage = '${registry.outputs.loginServer}/fleetscore-scoring:${scoringImageTag}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

// --- identities --------------------------------------------------------------------------

module appIdentity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'appIdentity'
  scope: rg
  params: { name: 'id-app-${token}', location: location, tags: tags }
}

module poolIdentity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'poolIdentity'
  scope: rg
  params: { name: 'id-pool-${token}', location: location, tags: tags }
}

// --- storage: the store, the Functions host (Durable task hub), the deployment package -----

module storage 'br/public:avm/res/storage/storage-account:0.8.3' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${token}'
    location: location
    tags: tags
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    minimumTlsVersion: 'TLS1_2'
    networkAcls: { defaultAction: 'Allow', bypass: 'AzureServices' }
    blobServices: {
      containers: [
        { name: storeContainer }   // windows/, models/, bank/, predictions/, runs/, arrivals/, rejects/, logs/
        { name: deploymentContainer }
      ]
    }
  }
}

// --- monitoring ---------------------------------------------------------------------------

module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.11.1' = {
  name: 'logAnalytics'
  scope: rg
  params: { name: 'log-${token}', location: location, tags: tags, dataRetention: 30 }
}

module appInsights 'br/public:avm/res/insights/component:0.6.0' = {
  name: 'appInsights'
  scope: rg
  params: {
    name: 'appi-${token}'
    location: location
    tags: tags
    workspaceResourceId: logAnalytics.outputs.resourceId
    disableLocalAuth: true
  }
}

// fleetscore's alerts (an app_insights sink's FleetscoreAlert events) to e-mails and webhooks.
module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    name: token
    location: location
    tags: tags
    appInsightsId: appInsights.outputs.resourceId
    emails: alertEmails
    webhooks: alertWebhooks
  }
}

// --- container registry, Event Hubs, Batch, Stream Analytics ------------------------------

module registry 'modules/registry.bicep' = {
  name: 'registry'
  scope: rg
  params: { name: 'cr${token}', location: location, tags: tags }
}

module eventHubs 'modules/eventhubs.bicep' = {
  name: 'eventHubs'
  scope: rg
  params: { name: 'evhns-${token}', location: location, tags: tags }
}

module batch 'modules/batch.bicep' = {
  name: 'batch'
  scope: rg
  params: {
    name: 'ba${token}'
    location: location
    tags: tags
    poolIdentityId: poolIdentity.outputs.resourceId
    poolName: batchPoolName
    vmSize: batchVmSize
    maxNodes: batchMaxNodes
    spot: batchSpot
    image: scoringImage
    registryServer: registry.outputs.loginServer
  }
}

module stream 'modules/stream.bicep' = {
  name: 'stream'
  scope: rg
  params: {
    name: 'asa-${token}'
    location: location
    tags: tags
    eventHubNamespace: eventHubs.outputs.name
    storageAccountName: storage.outputs.name
    storeContainer: storeContainer
  }
}

// --- the Function App (Flex Consumption, Python 3.11) -------------------------------------

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionApp'
  scope: rg
  params: {
    name: 'func-${token}'
    location: location
    tags: tags
    identityId: appIdentity.outputs.resourceId
    identityClientId: appIdentity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainer: deploymentContainer
    appInsightsConnectionString: appInsights.outputs.connectionString
    appSettings: {
      FLEETSCORE_STORE: 'az://${storeContainer}'
      FLEETSCORE_STORAGE_ACCOUNT_URL: 'https://${storage.outputs.name}.blob.${environment().suffixes.storage}'
      FLEETSCORE_BACKEND: scoringBackend
      FLEETSCORE_FANOUT: '200'
      FLEETSCORE_POLL_SECONDS: '30'
      FLEETSCORE_UNIT_DEADLINE_MINUTES: '120'
      FLEETSCORE_LOCK_TTL_MINUTES: '15'
      FLEETSCORE_PREDICTIONS_FORMAT: 'csv'
      FLEETSCORE_STORAGE_RETRIES: '5'
      FLEETSCORE_MAX_FAILED_PERCENT: maxFailedPercent
      FLEETSCORE_BATCH_ENDPOINT: 'https://${batch.outputs.accountEndpoint}'
      FLEETSCORE_BATCH_POOL_ID: batch.outputs.poolId
      FLEETSCORE_BATCH_VM_SIZE: batchVmSize
      FLEETSCORE_BATCH_MAX_NODES: string(batchMaxNodes)
      FLEETSCORE_BATCH_TASKS_PER_NODE: '2'
      FLEETSCORE_BATCH_SPOT: string(batchSpot)
      FLEETSCORE_BATCH_IMAGE: scoringImage
      FLEETSCORE_BATCH_REGISTRY: registry.outputs.loginServer
      FLEETSCORE_BATCH_IDENTITY_RESOURCE_ID: poolIdentity.outputs.resourceId
      // Handed to every task as AZURE_CLIENT_ID: the store, and the tasks' telemetry (the pool
      // identity has Monitoring Metrics Publisher on Application Insights, modules/roles.bicep;
      // the connection string is the app's own APPLICATIONINSIGHTS_CONNECTION_STRING).
      FLEETSCORE_BATCH_IDENTITY_CLIENT_ID: poolIdentity.outputs.clientId
      FLEETSCORE_BATCH_LOGS_CONTAINER_URL: 'https://${storage.outputs.name}.blob.${environment().suffixes.storage}/${storeContainer}'
      FLEETSCORE_BATCH_TASK_TIMEOUT_MINUTES: '60'
      FLEETSCORE_BATCH_TASK_RETRIES: '2'
      SCORING_SCHEDULE: scoringSchedule
      // The refit (docs/operations.md, "Scheduled refit"): no timer while the schedule is empty.
      FLEETSCORE_REFIT_SCHEDULE: refitSchedule
      FLEETSCORE_REFIT_DAYS: '7'
      FLEETSCORE_REFIT_COMPARE_HOURS: '24'
      FLEETSCORE_REFIT_MAX_ANOMALY_RATE: ''
      FLEETSCORE_REFIT_MIN_AGREEMENT: ''
      FLEETSCORE_REFIT_REVIEW: 'false'
      FLEETSCORE_REFIT_ESTIMATOR: ''
      FLEETSCORE_REFIT_FEATURES: ''
      DURABLE_TASK_HUB: 'fleetscore'
      WINDOWS_EVENTHUB: 'windows'
      WindowsEventHub__fullyQualifiedNamespace: '${eventHubs.outputs.name}.servicebus.windows.net'
      WindowsEventHub__credential: 'managedidentity'
      WindowsEventHub__clientId: appIdentity.outputs.clientId
    }
  }
}

// --- least-privilege roles ----------------------------------------------------------------

module roles 'modules/roles.bicep' = {
  name: 'roles'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    storeContainer: storeContainer
    appPrincipalId: appIdentity.outputs.principalId
    poolPrincipalId: poolIdentity.outputs.principalId
    streamPrincipalId: stream.outputs.principalId
    userPrincipalId: principalId
    registryName: registry.outputs.name
    batchAccountName: batch.outputs.accountName
    eventHubNamespace: eventHubs.outputs.name
    appInsightsName: appInsights.outputs.name
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_CONTAINER_REGISTRY_NAME string = registry.outputs.name
output AZURE_CONTAINER_REGISTRY_ENDPOINT string = registry.outputs.loginServer
output SCORING_IMAGE string = scoringImage
output STREAM_ANALYTICS_JOB string = stream.outputs.name
output EVENT_HUBS_NAMESPACE string = eventHubs.outputs.name
output STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_BATCH_ACCOUNT_NAME string = batch.outputs.accountName
output AZURE_BATCH_POOL_ID string = batch.outputs.poolId
output AZURE_APP_IDENTITY_PRINCIPAL_ID string = appIdentity.outputs.principalId
output AZURE_POOL_IDENTITY_PRINCIPAL_ID string = poolIdentity.outputs.principalId
output APPLICATIONINSIGHTS_NAME string = appInsights.outputs.name
